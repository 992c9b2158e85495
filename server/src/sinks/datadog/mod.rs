//! Datadog logs sink.
//!
//! API: <https://docs.datadoghq.com/api/latest/logs/#send-logs>; sites:
//! <https://docs.datadoghq.com/getting_started/site/>; client tokens:
//! <https://docs.datadoghq.com/account_management/api-app-keys/#client-tokens>.
//!
//! Datadog's limits, as this sink applies them:
//!
//! | limit | value | where |
//! |---|---|---|
//! | entries per request | 1,000; 50 to the browser intake (client tokens), the browser SDK's "Logs intake limit" | [`request_builder::MAX_EVENTS`], [`request_builder::MAX_BROWSER_EVENTS`] |
//! | uncompressed request | 5,000,000 bytes (the whole JSON array) | [`request_builder::MAX_PAYLOAD_BYTES`] |
//! | one log | 1,000,000 bytes; 256 KiB to the browser intake (the browser SDK discards larger ones); longer messages are cut here with a visible marker | [`request_builder::MAX_LOG_BYTES`], [`request_builder::MAX_BROWSER_LOG_BYTES`] |
//! | browser intake query | what the browser SDK sends: `ddsource` (the agent id, as in the body), `dd-api-key`, `dd-evp-origin-version` (logdrain's version), `dd-evp-origin=browser`, `dd-request-id` (a new UUID per request) | [`service::post`] |
//! | body | JSON array, `Content-Type: application/json`, `Content-Encoding: gzip` | [`request_builder`] |
//! | answers | 2xx accepted; 408/429/5xx retry (`Retry-After`); 400/413 permanent; 401/403 credentials | [`service::classify`] |
//! | timestamps | Datadog takes logs up to 18 h in the past and 2 h in the future (<https://docs.datadoghq.com/api/latest/logs/#send-logs>, <https://docs.datadoghq.com/logs/log_configuration/processors/log_date_remapper/>); older ones are discarded after a 202. The engine sends such lines with the time of sending, their own time in `logdrain.original_timestamp` (ms) | [`MAX_AGE`], [`crate::sinks::engine::late`] |
//!
//! Edges we could not confirm (see `docs/vendors-edges.md`): whether the
//! browser intake takes this body (a gzipped JSON array; the browser SDK
//! sends newline-separated JSON), and whether a JSON `message` carrying its
//! own `host`, `service`, `status` or `timestamp` can replace ours
//! (Datadog's docs say JSON inside `message` is not expanded automatically:
//! <https://github.com/DataDog/documentation/pull/6104>).
//!
//! Files: [`config`] (region → site, token form → intake and credential
//! placement), [`request_builder`] (lines → gzipped JSON), [`service`]
//! (HTTP call → classification). Retry, batching and backoff are the
//! engine's ([`crate::sinks::engine`]), not this module's.

pub mod config;
pub mod request_builder;
pub mod service;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::queue::QueuedLine;
use crate::route::{DestinationKind, RouteKey, Secrets};
use crate::sinks::{
    encoding_failed, BatchLimits, Prepared, SecretError, SendOutcome, Sink, SinkError, SinkSettings,
};
use config::Endpoint;

/// Oldest line Datadog keeps at its own time.
pub const MAX_AGE: Duration = Duration::from_secs(18 * 3600);

/// Delivers one route's lines to Datadog. `Debug` redacts the credential.
#[derive(Debug)]
pub struct DatadogSink {
    agent_id: Arc<str>,
    endpoint: Endpoint,
    http: reqwest::Client,
    limits: BatchLimits,
    /// Most bytes of a message's JSON text at this intake.
    max_message_json: usize,
}

impl DatadogSink {
    /// Builds the sink of `route` from `DATADOG_TOKEN` and `DATADOG_REGION`.
    pub fn new(
        route: &RouteKey,
        secrets: &Secrets,
        settings: &SinkSettings,
        http: &reqwest::Client,
    ) -> Result<Self, SecretError> {
        let endpoint = config::from_secrets(secrets, settings.datadog_url.as_ref())?;
        let (max_events, max_message_json) = match endpoint.credential {
            config::Credential::Header(_) => (
                request_builder::MAX_EVENTS,
                request_builder::MAX_MESSAGE_JSON_BYTES,
            ),
            config::Credential::Query(_) => (
                request_builder::MAX_BROWSER_EVENTS,
                request_builder::MAX_BROWSER_MESSAGE_JSON_BYTES,
            ),
        };
        Ok(Self {
            agent_id: Arc::from(route.agent_id.as_str()),
            endpoint,
            http: http.clone(),
            limits: BatchLimits {
                max_events,
                // One byte of the array is its opening bracket.
                max_bytes: request_builder::MAX_PAYLOAD_BYTES - 1,
                max_linger: settings.max_linger,
            },
            max_message_json,
        })
    }

    /// The intake URL (without the credential).
    pub fn url(&self) -> &url::Url {
        &self.endpoint.url
    }
}

#[async_trait]
impl Sink for DatadogSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Datadog
    }

    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn max_age(&self) -> Option<Duration> {
        Some(MAX_AGE)
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        request_builder::event_size(&self.agent_id, line, self.max_message_json)
    }

    fn prepares(&self) -> bool {
        true
    }

    fn prepare(&self, lines: &[QueuedLine]) -> Result<Prepared, SinkError> {
        let encoded = request_builder::encode(&self.agent_id, lines, self.max_message_json)
            .map_err(|e| encoding_failed("Datadog", &e))?;
        Ok(Prepared::body(encoded.body))
    }

    async fn send_prepared(
        &self,
        _lines: &[QueuedLine],
        prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        service::post(&self.http, &self.endpoint, &self.agent_id, prepared.body).await?;
        Ok(SendOutcome::accepted())
    }
}
