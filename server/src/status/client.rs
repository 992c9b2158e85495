//! The HTTP client side of `logdrain-gateway status` and `test-send`: asks a
//! running gateway and prints its answer as tables or JSON.
//!
//! It must not read the queue or the data dir: the gateway is the only
//! source of truth. Tokens travel only in the `Authorization` header and
//! never appear in errors.

use logdrain::client::read_pem;
use logdrain::{error_chain, ids};
use reqwest::StatusCode;
use url::Url;

use super::test_send::TestSendReport;
use super::{render_text, Report};
use crate::config::{GatewayHttpArgs, StatusConfig, TestSendConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the gateway at {url}: {reason}; is it running, and is --gateway-http / LOGDRAIN_GATEWAY_HTTP its --http-listen address?")]
    Unreachable { url: String, reason: String },
    #[error("the gateway at {url} refused: {status}: {body}")]
    Refused {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("the gateway at {url} answered something this command cannot read ({reason}); run matching versions of logdrain-gateway")]
    BadReply { url: String, reason: String },
}

fn endpoint(base: &Url, path: &str) -> Result<Url, ClientError> {
    base.join(path).map_err(|e| {
        ClientError::Config(format!(
            "--gateway-http {base} cannot be joined with {path}: {e}"
        ))
    })
}

async fn call(
    args: &GatewayHttpArgs,
    agent_id: Option<&str>,
    method: reqwest::Method,
    path: &str,
) -> Result<String, ClientError> {
    let bearer = args.bearer(agent_id).map_err(ClientError::Config)?;
    let url = endpoint(&args.gateway_http, path)?;
    let shown = url.to_string();
    let mut builder = reqwest::Client::builder().timeout(args.timeout);
    if let Some(path) = &args.gateway_ca_file {
        let pem = read_pem("--gateway-ca-file", path, "CERTIFICATE")
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ClientError::Config(format!(
                "--gateway-ca-file {path:?} holds no usable PEM certificate ({e}); give the CA certificate in PEM form"
            ))
        })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    let client = builder
        .build()
        .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
    let response = client
        .request(method, url)
        .bearer_auth(bearer)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: shown.clone(),
            reason: error_chain(&e.without_url()),
        })?;
    let status = response.status();
    let body = response.text().await.map_err(|e| ClientError::BadReply {
        url: shown.clone(),
        reason: e.without_url().to_string(),
    })?;
    if !status.is_success() {
        return Err(ClientError::Refused {
            url: shown,
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body)
}

fn checked_agent(agent_id: &str) -> Result<(), ClientError> {
    ids::check_agent_id(agent_id).map_err(|e| ClientError::Config(e.to_string()))
}

/// Fetches the report (one agent, or every agent with the admin token).
pub async fn fetch_status(config: &StatusConfig) -> Result<Report, ClientError> {
    let path = match &config.agent_id {
        Some(agent) => {
            checked_agent(agent)?;
            format!("v1/agents/{agent}/status")
        }
        None => "v1/status".to_string(),
    };
    let body = call(
        &config.gateway,
        config.agent_id.as_deref(),
        reqwest::Method::GET,
        &path,
    )
    .await?;
    let report: Report = serde_json::from_str(&body).map_err(|e| ClientError::BadReply {
        url: config.gateway.gateway_http.to_string(),
        reason: e.to_string(),
    })?;
    if report.schema != super::SCHEMA {
        return Err(ClientError::BadReply {
            url: config.gateway.gateway_http.to_string(),
            reason: format!(
                "schema {} where {} was expected",
                report.schema,
                super::SCHEMA
            ),
        });
    }
    Ok(report)
}

/// `logdrain-gateway status`: the text to print.
pub async fn status(config: &StatusConfig) -> Result<String, ClientError> {
    let report = fetch_status(config).await?;
    if config.json {
        serde_json::to_string_pretty(&report)
            .map(|s| s + "\n")
            .map_err(|e| ClientError::Config(format!("cannot encode the report: {e}")))
    } else {
        Ok(render_text(&report))
    }
}

/// `logdrain-gateway test-send`: the text to print.
pub async fn test_send(config: &TestSendConfig) -> Result<String, ClientError> {
    checked_agent(&config.agent_id)?;
    let path = format!("v1/agents/{}/test-send", config.agent_id);
    let body = call(
        &config.gateway,
        Some(&config.agent_id),
        reqwest::Method::POST,
        &path,
    )
    .await?;
    let report: TestSendReport =
        serde_json::from_str(&body).map_err(|e| ClientError::BadReply {
            url: config.gateway.gateway_http.to_string(),
            reason: e.to_string(),
        })?;
    if config.json {
        serde_json::to_string_pretty(&report)
            .map(|s| s + "\n")
            .map_err(|e| ClientError::Config(format!("cannot encode the answer: {e}")))
    } else {
        Ok(super::test_send::render_text(&report))
    }
}
