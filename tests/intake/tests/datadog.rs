//! The Datadog intake over real HTTP: what it accepts, what it refuses and
//! how it answers.

mod common;

use std::time::Duration;

use common::{gzip, json_body, logs, post, post_bytes, start, CLIENT_TOKEN, KEY};
use logdrain_test_intake::{AuthForm, Fault, Intake, Vendor};
use serde_json::{json, Value};

#[tokio::test]
async fn gzip_json_array_with_a_valid_key_is_accepted_and_recorded() {
    let intake = start().await;
    let sent = logs(3);
    let response = post(&intake, &sent).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(json_body(response).await, json!({}));

    assert_eq!(intake.datadog_entries(), sent.as_array().unwrap().clone());
    let requests = intake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.status, 202);
    assert_eq!(request.auth, Some(AuthForm::Header("DD-API-KEY")));
    assert_eq!(request.key.as_deref(), Some(KEY));
    assert_eq!(request.headers["content-encoding"], "gzip");
    assert!(!request.headers.contains_key("dd-api-key"));
    assert_eq!(request.entries, 3);
    assert_eq!(request.decoded_bytes, Some(sent.to_string().len()));
    let entries = intake.entries(Vendor::Datadog);
    assert!(entries
        .iter()
        .all(|e| e.request_id == request.id && !e.oversized));
}

/// The query Datadog's browser SDK sends with a client token.
fn browser_query(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ddsource", "agent-1".to_string()),
        ("dd-api-key", token.to_string()),
        ("dd-evp-origin-version", "6.0.0".to_string()),
        ("dd-evp-origin", "browser".to_string()),
        (
            "dd-request-id",
            "0b7c3ad6-3c25-4c5c-9f0e-2d1f0c9c8f11".to_string(),
        ),
    ]
}

/// A client-token request with `query` and `body`.
fn post_browser(
    intake: &Intake,
    query: &[(&str, String)],
    body: &Value,
) -> reqwest::RequestBuilder {
    post_bytes(intake, gzip(body.to_string().as_bytes())).query(query)
}

#[tokio::test]
async fn a_client_token_in_the_query_is_accepted_and_its_form_recorded() {
    let intake = start().await;
    let response = post_browser(&intake, &browser_query(CLIENT_TOKEN), &logs(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let request = &intake.requests()[0];
    assert_eq!(request.auth, Some(AuthForm::Query("dd-api-key")));
    assert_eq!(request.key.as_deref(), Some(CLIENT_TOKEN));
}

#[tokio::test]
async fn the_browser_intake_wants_each_parameter_the_browser_sdk_sends() {
    let intake = start().await;
    for missing in [
        "ddsource",
        "dd-evp-origin-version",
        "dd-evp-origin",
        "dd-request-id",
    ] {
        let query: Vec<_> = browser_query(CLIENT_TOKEN)
            .into_iter()
            .filter(|(name, _)| *name != missing)
            .collect();
        let response = post_browser(&intake, &query, &logs(1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{missing}");
        let body = json_body(response).await;
        let detail = body["errors"][0]["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(missing), "{detail}");
    }
    assert!(intake.datadog_entries().is_empty());
}

#[tokio::test]
async fn the_browser_intake_takes_50_entries_and_marks_one_of_256_kib_oversized() {
    let intake = start().await;
    let query = browser_query(CLIENT_TOKEN);
    let at_limit = post_browser(&intake, &query, &logs(50))
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 202);
    let over = post_browser(&intake, &query, &logs(51))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 413);
    intake.reset();

    // The SDK discards a message of 256 KiB or more; the API intake's
    // limit is 1 MB.
    let mut big = logs(2);
    big[0]["message"] = json!("x".repeat(256 * 1024));
    let response = post_browser(&intake, &query, &big).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let response = post(&intake, &big).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let oversized: Vec<bool> = intake
        .entries(Vendor::Datadog)
        .iter()
        .map(|e| e.oversized)
        .collect();
    assert_eq!(oversized, [true, false, false, false]);
}

#[tokio::test]
async fn a_missing_key_is_forbidden() {
    let intake = start().await;
    let response = post_bytes(&intake, gzip(logs(1).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(json_body(response).await, json!({"errors": ["Forbidden"]}));
    assert!(intake.datadog_entries().is_empty());
    assert_eq!(intake.requests()[0].auth, None);
}

#[tokio::test]
async fn an_unknown_key_is_forbidden_and_never_recorded() {
    let intake = start().await;
    let response = post_bytes(&intake, gzip(logs(1).to_string().as_bytes()))
        .header("DD-API-KEY", "someone-elses-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(json_body(response).await, json!({"errors": ["Forbidden"]}));
    let request = &intake.requests()[0];
    assert_eq!(request.key, None);
    assert!(!format!("{request:?}").contains("someone-elses-key"));
    assert_eq!(intake.stats().vendor(Vendor::Datadog).status(403), 1);
}

#[tokio::test]
async fn keys_can_be_replaced_while_running() {
    let intake = start().await;
    intake.set_keys(Vendor::Datadog, ["rotated"]);
    let old = post(&intake, &logs(1)).send().await.unwrap();
    assert_eq!(old.status(), 403);
    let new = post_bytes(&intake, gzip(logs(1).to_string().as_bytes()))
        .header("DD-API-KEY", "rotated")
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 202);
}

#[tokio::test]
async fn a_body_that_is_not_gzip_is_a_bad_request() {
    let intake = start().await;
    let response = post_bytes(&intake, logs(1).to_string().into_bytes())
        .header("DD-API-KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = json_body(response).await;
    assert_eq!(body["errors"][0]["status"], "400");
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("gzip"),
        "{body}"
    );
    assert!(intake.datadog_entries().is_empty());
}

#[tokio::test]
async fn a_wrong_content_encoding_is_a_bad_request() {
    let intake = start().await;
    let response = reqwest::Client::new()
        .post(intake.datadog_url())
        .header("DD-API-KEY", KEY)
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "deflate")
        .body(gzip(logs(1).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let reason = intake.requests()[0].reason.clone().unwrap();
    assert!(reason.contains("Content-Encoding"), "{reason}");
}

#[tokio::test]
async fn a_wrong_content_type_is_a_bad_request() {
    let intake = start().await;
    let response = reqwest::Client::new()
        .post(intake.datadog_url())
        .header("DD-API-KEY", KEY)
        .header("Content-Type", "text/plain")
        .header("Content-Encoding", "gzip")
        .body(gzip(logs(1).to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn json_that_is_not_an_array_is_a_bad_request() {
    let intake = start().await;
    let response = post(&intake, &json!({"message": "one object"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = json_body(response).await;
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("array"),
        "{body}"
    );
}

#[tokio::test]
async fn an_entry_without_a_message_is_a_bad_request_and_nothing_is_recorded() {
    let intake = start().await;
    let response = post(&intake, &json!([{"message": "ok"}, {"msg": "no message"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(intake.datadog_entries().is_empty());
}

#[tokio::test]
async fn one_thousand_entries_are_accepted_and_one_more_is_too_large() {
    let intake = start().await;
    let at_limit = post(&intake, &logs(1_000)).send().await.unwrap();
    assert_eq!(at_limit.status(), 202);
    let over = post(&intake, &logs(1_001)).send().await.unwrap();
    assert_eq!(over.status(), 413);
    let body = json_body(over).await;
    assert_eq!(body["errors"][0]["status"], "413");
    assert_eq!(intake.datadog_entries().len(), 1_000);
}

#[tokio::test]
async fn a_payload_over_five_megabytes_is_too_large() {
    let intake = start().await;
    // Six entries of 900 kB each: 5.4 MB uncompressed, a few kB gzipped.
    let big = "x".repeat(900_000);
    let payload = Value::Array((0..6).map(|_| json!({ "message": big })).collect());
    let response = post(&intake, &payload).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert!(intake.datadog_entries().is_empty());
    let reason = intake.requests()[0].reason.clone().unwrap();
    assert!(reason.contains("5000000"), "{reason}");
}

#[tokio::test]
async fn an_entry_over_one_megabyte_is_accepted_and_marked_oversized() {
    let intake = start().await;
    let payload = json!([{ "message": "x".repeat(1_100_000) }, { "message": "small" }]);
    let response = post(&intake, &payload).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let oversized: Vec<bool> = intake
        .entries(Vendor::Datadog)
        .iter()
        .map(|e| e.oversized)
        .collect();
    assert_eq!(oversized, [true, false]);
    assert_eq!(intake.stats().vendor(Vendor::Datadog).oversized_entries, 1);
}

#[tokio::test]
async fn injected_errors_answer_the_next_requests_then_requests_pass() {
    let intake = start().await;
    intake.inject(Fault::next(2, 500)).unwrap();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            post(&intake, &logs(2))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 500, 202]);
    assert_eq!(
        intake.datadog_entries().len(),
        2,
        "only the accepted request is recorded"
    );
    let stats = intake.stats().vendor(Vendor::Datadog);
    assert_eq!(
        (stats.status(500), stats.status(202), stats.injected),
        (2, 1, 2)
    );
}

#[tokio::test]
async fn an_injected_429_carries_retry_after() {
    let intake = start().await;
    intake
        .inject(
            Fault::next(1, 429)
                .retry_after("3")
                .for_vendor(Vendor::Datadog),
        )
        .unwrap();
    let response = post(&intake, &logs(1)).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    let body = json_body(response).await;
    assert_eq!(body["errors"][0]["status"], "429");
    assert!(intake.requests()[0].injected);
}

#[tokio::test]
async fn a_fault_until_cleared_answers_every_request_until_cleared() {
    let intake = start().await;
    intake.inject(Fault::until_cleared(503)).unwrap();
    for _ in 0..3 {
        assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 503);
    }
    intake.clear_faults();
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn an_invalid_fault_is_refused() {
    let intake = start().await;
    assert!(intake.inject(Fault::next(0, 500)).is_err());
    assert!(intake.inject(Fault::next(1, 7)).is_err());
    assert_eq!(post(&intake, &logs(1)).send().await.unwrap().status(), 202);
}

#[tokio::test]
async fn wait_for_entries_returns_once_they_arrived() {
    let intake = start().await;
    let send = async {
        for _ in 0..2 {
            post(&intake, &logs(2)).send().await.unwrap();
        }
    };
    let (waited, ()) = tokio::join!(
        intake.wait_for_entries(Vendor::Datadog, 4, Duration::from_secs(30)),
        send
    );
    assert_eq!(waited.unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn wait_for_gives_up_at_its_deadline_and_says_what_it_waited_for() {
    let intake = start().await;
    let err = intake
        .wait_for_entries(Vendor::Datadog, 1, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("1 datadog entries (0 arrived)"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let intake = start().await;
    let url = intake.datadog_url();
    intake.shutdown().await.unwrap();
    let result = reqwest::Client::new().post(url).send().await;
    assert!(result.is_err(), "the port no longer answers");
}

#[tokio::test(start_paused = true)]
async fn arrival_instants_follow_tokios_clock_so_retry_spacing_is_measurable() {
    let intake = start().await;
    post(&intake, &logs(1)).send().await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    post(&intake, &logs(1)).send().await.unwrap();
    let requests = intake.requests();
    let spacing = requests[1].arrived - requests[0].arrived;
    assert!(spacing >= Duration::from_secs(7), "{spacing:?}");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_fault_answers_after_its_delay() {
    let intake = start().await;
    intake
        .inject(Fault::next(1, 504).delay(Duration::from_secs(30)))
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = post(&intake, &logs(1)).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test]
async fn logs_older_than_18_hours_are_accepted_and_silently_dropped_like_datadog() {
    let intake = start().await;
    let mut body = logs(3);
    let now_ms = body[0]["timestamp"].as_i64().unwrap();
    body[0]["timestamp"] = json!(now_ms - 20 * 3_600_000);
    body[1]["timestamp"] = json!(now_ms - 17 * 3_600_000);
    let response = post(&intake, &body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let kept: Vec<Value> = intake.datadog_entries();
    let messages: Vec<&str> = kept
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["line 1", "line 2"]);
}
