//! The HTTP control API: what a test driving `docker compose` uses to
//! script faults and read what the intakes received.

mod common;

use common::{json_body, logs, post, start, KEY};
use serde_json::{json, Value};

fn control(intake: &logdrain_test_intake::Intake, path: &str) -> String {
    format!("{}/_intake{path}", intake.base_url())
}

#[tokio::test]
async fn a_fault_injected_over_http_answers_the_next_request() {
    let intake = start().await;
    let client = reqwest::Client::new();
    let injected = client
        .post(control(&intake, "/faults"))
        .json(&json!({"vendor": "datadog", "status": 429, "times": 1, "retry_after": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(injected.status(), 200);

    let refused = post(&intake, &logs(1)).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "2");
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn faults_until_cleared_are_cleared_over_http() {
    let intake = start().await;
    let client = reqwest::Client::new();
    client
        .post(control(&intake, "/faults"))
        .json(&json!({"status": 503}))
        .send()
        .await
        .unwrap();
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 503);
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 503);
    let cleared = client
        .delete(control(&intake, "/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn a_malformed_fault_is_refused_with_the_reason() {
    let intake = start().await;
    let client = reqwest::Client::new();
    let misspelled = client
        .post(control(&intake, "/faults"))
        .json(&json!({"status": 500, "time": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(misspelled.status(), 400);
    let body = json_body(misspelled).await;
    assert!(body["error"].as_str().unwrap().contains("time"), "{body}");

    let bad_status = client
        .post(control(&intake, "/faults"))
        .json(&json!({"status": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), 400);
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn entries_are_read_over_http() {
    let intake = start().await;
    let sent = logs(2);
    post(&intake, &sent).send().await.unwrap();
    let client = reqwest::Client::new();

    let entries = client
        .get(control(&intake, "/datadog/entries"))
        .send()
        .await
        .unwrap();
    assert_eq!(entries.status(), 200);
    assert_eq!(json_body(entries).await, sent);

    let detailed = client
        .get(control(&intake, "/datadog/entries?detail=true"))
        .send()
        .await
        .unwrap();
    let detailed = json_body(detailed).await;
    assert_eq!(detailed[1]["value"], sent[1]);
    assert_eq!(detailed[1]["key"], KEY);
    assert_eq!(detailed[1]["request_id"], 0);
    assert_eq!(detailed[1]["oversized"], false);
}

#[tokio::test]
async fn stats_count_requests_per_vendor_and_status() {
    let intake = start().await;
    intake
        .inject(logdrain_test_intake::Fault::next(1, 500))
        .unwrap();
    post(&intake, &logs(1)).send().await.unwrap();
    post(&intake, &logs(3)).send().await.unwrap();
    reqwest::Client::new()
        .post(intake.datadog_url())
        .send()
        .await
        .unwrap();

    let stats = reqwest::get(control(&intake, "/stats")).await.unwrap();
    let stats = json_body(stats).await;
    let datadog = &stats["vendors"]["datadog"];
    assert_eq!(datadog["requests"], 3);
    assert_eq!(datadog["by_status"], json!({"202": 1, "403": 1, "500": 1}));
    assert_eq!(datadog["entries"], 3);
    assert_eq!(datadog["injected"], 1);
    assert_eq!(stats["dropped_entries"], 0);
}

#[tokio::test]
async fn stats_say_when_each_vendor_last_accepted_an_entry() {
    let intake = start().await;
    let stats_url = control(&intake, "/stats");
    let stats = json_body(reqwest::get(&stats_url).await.unwrap()).await;
    assert_eq!(stats["vendors"]["datadog"], Value::Null, "nothing yet");

    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now_ms();
    post(&intake, &logs(2)).send().await.unwrap();
    let after = now_ms();
    let stats = json_body(reqwest::get(&stats_url).await.unwrap()).await;
    let accepted = stats["vendors"]["datadog"]["last_accepted_unix_ms"]
        .as_u64()
        .unwrap();
    assert!((before..=after).contains(&accepted), "{stats}");
}

#[tokio::test]
async fn requests_are_listed_with_status_reason_and_auth_form() {
    let intake = start().await;
    reqwest::Client::new()
        .post(intake.datadog_url())
        .send()
        .await
        .unwrap();
    post(&intake, &logs(1)).send().await.unwrap();
    let requests = json_body(reqwest::get(control(&intake, "/requests")).await.unwrap()).await;
    let requests = requests.as_array().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["status"], 403);
    assert!(requests[0]["reason"]
        .as_str()
        .unwrap()
        .contains("DD-API-KEY"));
    assert_eq!(requests[1]["status"], 202);
    assert_eq!(requests[1]["auth"], json!({"header": "DD-API-KEY"}));
    assert_eq!(requests[1]["vendor"], "datadog");
}

#[tokio::test]
async fn keys_are_replaced_over_http() {
    let intake = start().await;
    let client = reqwest::Client::new();
    let replaced = client
        .put(control(&intake, "/datadog/keys"))
        .json(&json!(["other-key"]))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn an_unknown_vendor_is_not_found_and_named() {
    let intake = start().await;
    let response = reqwest::get(control(&intake, "/splunk/entries"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("datadog"),
        "{body}"
    );
}

#[tokio::test]
async fn reset_forgets_records_and_faults_but_keeps_keys() {
    let intake = start().await;
    post(&intake, &logs(2)).send().await.unwrap();
    intake
        .inject(logdrain_test_intake::Fault::until_cleared(500))
        .unwrap();
    let reset = reqwest::Client::new()
        .post(control(&intake, "/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert!(intake.datadog_entries().is_empty());
    assert_eq!(intake.stats(), Default::default());
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 202);
    let entries: Value = json_body(
        reqwest::get(control(&intake, "/datadog/entries"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(entries.as_array().unwrap().len(), 1);
}
