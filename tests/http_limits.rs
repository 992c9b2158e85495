//! The HTTP listener under a slowloris attack: hundreds of connections that
//! send half a request and then nothing, against a gateway whose open file
//! limit they would exhaust. A shim ships at the same time; its lines must
//! arrive, and `/healthz` must answer.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Far more half-sent requests than the gateway has file descriptors.
const SLOW_CONNECTIONS: usize = 400;
const OPEN_FILES: u32 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowloris_attack_neither_stops_ingest_nor_health_probes() {
    let intake = intake().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with_open_files(
        &dir.path().join("gw"),
        &intake.base_url(),
        OPEN_FILES,
        vec![
            ("LOGDRAIN_HTTP_MAX_CONNECTIONS".into(), "32".into()),
            // Long enough that the header timeout is not what saves it.
            ("LOGDRAIN_HTTP_HEADER_TIMEOUT".into(), "10m".into()),
        ],
    );

    let http = gateway.http;
    let attack = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..SLOW_CONNECTIONS {
            // Connections the gateway no longer accepts still complete in
            // the kernel's backlog until it is full; stop there.
            let Ok(mut conn) = TcpStream::connect_timeout(&http, Duration::from_secs(5)) else {
                break;
            };
            let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ");
            held.push(conn);
        }
        held
    });
    let held = attack.await.unwrap();
    assert!(
        held.len() > OPEN_FILES as usize,
        "the attack outnumbers the file limit"
    );

    let mut shim = ShimBuilder::new(&gateway.url(), "agent-slowloris", "replica-1")
        .env("DATADOG_TOKEN", DD_KEY)
        .spawn_sh("seq -f 'line %g' 1 20");
    let _pipes = capture(&mut shim);
    assert!(
        wait_until(Duration::from_secs(60), || dd_messages(
            &intake,
            "replica-1"
        )
        .len()
            == 20)
        .await,
        "the shim's lines did not arrive during the attack:\n{}",
        gateway.log()
    );

    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .get(format!("http://{}/healthz", gateway.http))
        .send()
        .await
        .expect("/healthz answers during the attack");
    assert_eq!(health.status(), 200);
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "logdrain_http_refused_total",
            &[("reason", "idle_evicted")]
        ) > 0.0,
        "{metrics}"
    );
    drop(held);
}
