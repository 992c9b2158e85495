//! One view of the fleet: three gateways on 127.0.0.1–3, each listing all
//! three (itself included) as --peers, shims spread over them by rank.
//! `tail` and `status` asked of one gateway show every replica and route,
//! each naming its gateway; a stopped or silent peer is named as missing;
//! a tenant's token reads its own agent only, on every peer.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{StatusRequest, TailRequest};
use serde_json::Value;

const ADMIN: &str = "fleet-admin-token-0123456789";

struct Fleet {
    gateways: Vec<Gateway>,
    /// Each gateway's name in the fleet (`127.0.0.N:PORT`).
    names: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Three gateways; `extra_peers` are listed after them.
    fn start(datadog_url: &str, extra_peers: &[String]) -> Fleet {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let names: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}:{port}")).collect();
        let mut peers = names.clone();
        peers.extend(extra_peers.iter().cloned());
        let dir = tempfile::tempdir().unwrap();
        let gateways = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Gateway::start_with(
                    &dir.path().join(format!("gw{i}")),
                    datadog_url,
                    name,
                    &format!("{}:0", name.split(':').next().unwrap()),
                    vec![
                        ("LOGDRAIN_PEERS".into(), peers.join(",")),
                        ("LOGDRAIN_PEER_TIMEOUT".into(), "1s".into()),
                        ("LOGDRAIN_ADMIN_TOKEN".into(), ADMIN.into()),
                    ],
                )
            })
            .collect();
        Fleet {
            gateways,
            names,
            _dir: dir,
        }
    }

    /// Every gateway's gRPC URL, as a shim's --gateway list.
    fn list(&self) -> String {
        let urls: Vec<String> = self.names.iter().map(|n| format!("http://{n}")).collect();
        urls.join(",")
    }

    /// The first agent-server id `prefix-N` the shims rank first on each
    /// gateway, in gateway order.
    fn one_replica_per_gateway(&self, prefix: &str) -> Vec<String> {
        (0..self.names.len())
            .map(|g| {
                (0..)
                    .map(|n| format!("{prefix}-{n}"))
                    .find(|id| logdrain::fleet::rank(id, &self.names)[0] == g)
                    .unwrap()
            })
            .collect()
    }
}

/// `logdrain-gateway status --json` asked of `gateway` with `token`.
fn status_json(gateway: &Gateway, agent: Option<&str>, token: &str) -> Value {
    let out = status_cli(gateway, agent, token, true);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn status_cli(gateway: &Gateway, agent: Option<&str>, token: &str, json: bool) -> String {
    let mut command = Command::new(bin("logdrain-gateway"));
    command
        .arg("status")
        .args(["--gateway-http", &format!("http://{}", gateway.http)]);
    match agent {
        Some(agent) => command.args(["--agent-id", agent, "--token", token]),
        None => command.args(["--admin-token", token]),
    };
    if json {
        command.arg("--json");
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `(agent_server_id, gateway)` of every replica of the report's agent.
fn replicas(report: &Value) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = report["agents"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["agent_server_id"].as_str().unwrap().to_string(),
                r["gateway"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    list.sort();
    list
}

/// A running `tail --json`, its lines parsed as they come.
struct Tail {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Tail {
    fn start(gateway_url: &str, agent: &str) -> Tail {
        let mut child = Command::new(bin("logdrain-gateway"))
            .args([
                "tail",
                "--json",
                "--agent-id",
                agent,
                "--gateway",
                gateway_url,
            ])
            .env("LOGDRAIN_TOKEN", token(agent))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str(&line) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines }
    }

    /// The next line whose message contains `text`.
    async fn wait_for(&mut self, text: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line["message"].as_str().unwrap_or("").contains(text) => {
                    return line
                }
                Ok(Some(_)) => {}
                _ => panic!("the tail never showed {text:?}"),
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_and_status_asked_of_one_gateway_show_every_replica_with_its_gateway() {
    let intake = intake().await;
    let mut fleet = Fleet::start(&intake.base_url(), &[]);
    let agent = "agent-fleet";
    let replicas_by_gateway = fleet.one_replica_per_gateway("replica");

    let mut tail = Tail::start(&format!("http://{}", fleet.names[0]), agent);
    // Each gateway lists itself among its peers: it must know itself, or
    // every line would come twice.
    let coverage = tail.wait_for("this tail follows").await;
    assert_eq!(
        coverage["message"],
        format!(
            "logdrain-gateway: this tail follows {} (this one), {}, {}",
            fleet.names[0], fleet.names[1], fleet.names[2]
        )
    );

    for replica in &replicas_by_gateway {
        let mut shim = ShimBuilder::new(&fleet.list(), agent, replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&format!("echo 'hello from {replica}'"));
        let _pipes = capture(&mut shim);
        assert!(wait_exit(&mut shim, Duration::from_secs(60))
            .await
            .success());
    }
    for (g, replica) in replicas_by_gateway.iter().enumerate() {
        let line = tail.wait_for(&format!("hello from {replica}")).await;
        assert_eq!(line["agent_server_id"], replica.as_str());
        assert_eq!(line["gateway"], fleet.names[g].as_str(), "{line}");
    }

    // Every gateway answers for the whole fleet, its own part and its
    // peers' alike.
    let expected: Vec<(String, String)> = {
        let mut list: Vec<(String, String)> = replicas_by_gateway
            .iter()
            .cloned()
            .zip(fleet.names.iter().cloned())
            .collect();
        list.sort();
        list
    };
    for gateway in &fleet.gateways {
        let report = status_json(gateway, Some(agent), &token(agent));
        assert_eq!(replicas(&report), expected, "{report}");
        let mut routes: Vec<&str> = report["agents"][0]["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["gateway"].as_str().unwrap())
            .collect();
        routes.sort();
        assert_eq!(routes, fleet.names, "one datadog route on each gateway");
        assert_eq!(report["missing_gateways"], serde_json::json!([]));
    }

    // A stopped peer is named, in the status (JSON, text, page) and the tail.
    fleet.gateways[2].kill9();
    let report = status_json(&fleet.gateways[0], Some(agent), &token(agent));
    assert_eq!(
        report["missing_gateways"][0]["gateway"],
        fleet.names[2].as_str()
    );
    let held: Vec<String> = replicas(&report).into_iter().map(|(r, _)| r).collect();
    assert!(!held.contains(&replicas_by_gateway[2]), "{report}");
    let text = status_cli(&fleet.gateways[0], Some(agent), &token(agent), false);
    assert!(
        text.contains(&format!("MISSING   {}:", fleet.names[2])),
        "{text}"
    );
    let page = reqwest::Client::new()
        .get(format!(
            "http://{}/?agent_id={agent}",
            fleet.gateways[1].http
        ))
        .bearer_auth(token(agent))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("missing gateway {}", fleet.names[2])),
        "{page}"
    );
    tail.wait_for(&format!(
        "peer {} is missing from this tail",
        fleet.names[2]
    ))
    .await;
    // Back on the same address: the tail follows it again.
    fleet.gateways[2].restart();
    tail.wait_for(&format!("peer {} answers again", fleet.names[2]))
        .await;
    let replica = &replicas_by_gateway[2];
    let mut shim = ShimBuilder::new(&fleet.list(), agent, replica)
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("echo 'back again'");
    let _pipes = capture(&mut shim);
    assert!(wait_exit(&mut shim, Duration::from_secs(60))
        .await
        .success());
    let line = tail.wait_for("back again").await;
    assert_eq!(line["gateway"], fleet.names[2].as_str(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_token_reads_its_own_agent_on_every_peer_and_nothing_more() {
    let intake = intake().await;
    let fleet = Fleet::start(&intake.base_url(), &[]);
    // One replica of each agent, on different gateways.
    let a = &fleet.one_replica_per_gateway("a")[1];
    let b = &fleet.one_replica_per_gateway("b")[2];
    for (agent, replica) in [("agent-a", a), ("agent-b", b)] {
        let mut shim = ShimBuilder::new(&fleet.list(), agent, replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh("echo hello");
        let _pipes = capture(&mut shim);
        assert!(wait_exit(&mut shim, Duration::from_secs(60))
            .await
            .success());
    }

    // Asked of gateway 1 with agent-a's token: agent-a only.
    let report = status_json(&fleet.gateways[0], Some("agent-a"), &token("agent-a"));
    let agents: Vec<&str> = report["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["agent-a"]);
    assert_eq!(replicas(&report), [(a.clone(), fleet.names[1].clone())]);

    // The peers' own RPC checks the token itself: another agent's, or every
    // agent without the admin token, is refused.
    let mut client = DrainClient::connect(format!("http://{}", fleet.names[2]))
        .await
        .unwrap();
    for (token_for, agent_id) in [("agent-a", "agent-b"), ("agent-a", "")] {
        let status = client
            .status(StatusRequest {
                token: token(token_for),
                agent_id: agent_id.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(!status.message().contains(&token(token_for)));
    }
    // The admin token reads every agent, across the fleet.
    let all = status_json(&fleet.gateways[0], None, ADMIN);
    let agents: Vec<&str> = all["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["agent-a", "agent-b"], "{all}");

    // A tail with another agent's token is refused before any peer is asked.
    let status = client
        .tail(TailRequest {
            token: token("agent-a"),
            agent_id: "agent-b".into(),
            local_only: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_never_answers_costs_the_timeout_and_is_named_missing() {
    let intake = intake().await;
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
    let silent_name = silent.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for conn in silent.incoming().take(8) {
            kept.push(conn);
        }
        kept
    });
    let fleet = Fleet::start(&intake.base_url(), std::slice::from_ref(&silent_name));
    let agent = "agent-slow";
    let report = status_json(&fleet.gateways[0], Some(agent), &token(agent));
    assert_eq!(
        report["missing_gateways"][0]["gateway"],
        silent_name.as_str()
    );
    assert!(
        report["missing_gateways"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no answer within 1s"),
        "{report}"
    );
    let gateways = report["gateways"].as_array().unwrap().len();
    assert_eq!(gateways, 3, "{report}");
    drop(fleet);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peers_tail_call_is_answered_from_its_own_replicas_and_never_fans_out() {
    let intake = intake().await;
    let fleet = Fleet::start(&intake.base_url(), &[]);
    let agent = "agent-local";
    let on = fleet.one_replica_per_gateway("r");
    // What a gateway sends its peers, sent by hand to gateway 1.
    let mut client = DrainClient::connect(format!("http://{}", fleet.names[0]))
        .await
        .unwrap();
    let mut local = client
        .tail(TailRequest {
            token: token(agent),
            agent_id: agent.into(),
            local_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    // A line on gateway 2 first, then one on gateway 1: fanned out, the
    // first would arrive first (after a coverage notice).
    for (replica, text) in [(&on[1], "on gateway 2"), (&on[0], "on gateway 1")] {
        let mut shim = ShimBuilder::new(&fleet.list(), agent, replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .spawn_sh(&format!("echo '{text}'"));
        let _pipes = capture(&mut shim);
        assert!(wait_exit(&mut shim, Duration::from_secs(60))
            .await
            .success());
    }
    let first = tokio::time::timeout(Duration::from_secs(60), local.message())
        .await
        .expect("a line")
        .unwrap()
        .unwrap();
    assert_eq!(first.agent_server_id, on[0].as_str());
    assert_eq!(&first.line.unwrap().data[..], b"on gateway 1");
    assert_eq!(first.gateway, fleet.names[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_wide_tails_are_bounded_and_a_closed_one_frees_its_place() {
    let intake = intake().await;
    let fleet = Fleet::start(&intake.base_url(), &[]);
    let agent = "agent-many";
    let mut client = DrainClient::connect(format!("http://{}", fleet.names[0]))
        .await
        .unwrap();
    let request = TailRequest {
        token: token(agent),
        agent_id: agent.into(),
        local_only: false,
    };
    let mut open = Vec::new();
    for _ in 0..256 {
        open.push(client.tail(request.clone()).await.unwrap().into_inner());
    }
    let refused = client
        .tail(request.clone())
        .await
        .expect_err("over the bound");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("at most 256"), "{refused:?}");
    // Peers' own calls are not fleet-wide tails: still served.
    let local = TailRequest {
        local_only: true,
        ..request.clone()
    };
    assert!(client.tail(local).await.is_ok());

    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.tail(request.clone()).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed tail's place was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutual_tls_fleet_shows_every_replica_through_its_peers() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::Pki::generate(&dir.path().join("pki"));
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let names: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers: Vec<String> = names.iter().map(|n| format!("https://{n}")).collect();
    let gateways: Vec<Gateway> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut env = pki.gateway_env(true);
            env.push(("LOGDRAIN_PEERS".into(), peers.join(",")));
            env.push(("LOGDRAIN_PEER_CA_FILE".into(), pki::path(&pki.ca)));
            Gateway::start_with(
                &dir.path().join(format!("gw{i}")),
                &intake.base_url(),
                name,
                "127.0.0.1:0",
                env,
            )
        })
        .collect();
    let agent = "agent-tls-fleet";
    let mut expected = Vec::new();
    for g in 0..2 {
        let replica = (0..)
            .map(|n| format!("t-{n}"))
            .find(|id| logdrain::fleet::rank(id, &names)[0] == g)
            .unwrap();
        let mut shim = ShimBuilder::new(&peers.join(","), agent, &replica)
            .env("DATADOG_TOKEN", DD_KEY)
            .env("LOGDRAIN_GATEWAY_CA_FILE", &pki::path(&pki.ca))
            .env("LOGDRAIN_CLIENT_CERT", &pki::path(&pki.client_cert))
            .env("LOGDRAIN_CLIENT_KEY", &pki::path(&pki.client_key))
            .spawn_sh("echo hello");
        let _pipes = capture(&mut shim);
        assert!(wait_exit(&mut shim, Duration::from_secs(60))
            .await
            .success());
        expected.push((replica, names[g].clone()));
    }
    let report: Value = pki
        .http_client()
        .get(format!(
            "{}/v1/agents/{agent}/status",
            gateways[0].https_base()
        ))
        .bearer_auth(token(agent))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        report["missing_gateways"],
        serde_json::json!([]),
        "{report}"
    );
    expected.sort();
    assert_eq!(replicas(&report), expected, "{report}");
}
