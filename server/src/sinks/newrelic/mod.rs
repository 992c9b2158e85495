//! New Relic logs sink (Log API).
//!
//! API: <https://docs.newrelic.com/docs/logs/log-api/introduction-log-api/>;
//! attribute limits: <https://docs.newrelic.com/docs/logs/log-api/log-event-data/>.
//!
//! New Relic's limits, as this sink applies them:
//!
//! | limit | value | where |
//! |---|---|---|
//! | endpoint | US `https://log-api.newrelic.com/log/v1`; EU `https://log-api.eu.newrelic.com/log/v1` for license keys whose region (leading letters) is `eu…`; FedRAMP `https://gov-log-api.newrelic.com/log/v1` for `gov`; `jp` keys: endpoint unconfirmed, US unless `--newrelic-url`; `--newrelic-url` replaces scheme, host and port | [`config::Region::of_key`], [`config::endpoint_url`] |
//! | auth | `X-License-Key: <NEW_RELIC_LICENSE_KEY>` | [`service::post`] |
//! | body | detailed JSON form, one `{common, logs}` block per (agent-server id, stream); `Content-Type: application/json`, `Content-Encoding: gzip` | [`request_builder`] |
//! | one POST | 1,000,000 bytes gzipped: batches are cut at 990,000 bytes uncompressed, which cannot gzip past it | [`request_builder::MAX_JSON_BYTES`] |
//! | one attribute | first 4,094 characters searchable, up to ~128 KB kept: messages over 128,000 bytes are cut here with a visible marker | [`request_builder::MAX_MESSAGE_BYTES`] |
//! | attributes per event | 255: we send at most 11 | |
//! | encoding | UTF-8 only: invalid bytes become U+FFFD | [`request_builder`] |
//! | answers | 2xx (202) accepted; 408/429/5xx retry (`Retry-After`); 400/413 permanent; 401/403 credentials | [`service::classify`] |
//! | timestamps | integer milliseconds; payloads older than 48 h may be dropped after a 202 (<https://docs.newrelic.com/docs/logs/log-api/introduction-log-api/>, <https://github.com/newrelic/docs-website/pull/3230>): the engine sends such lines, and lines over 2 h ahead, with the time of sending, their own time in `logdrain.original_timestamp` (ms) | [`MAX_AGE`], [`crate::sinks::engine::late`] |
//!
//! Unconfirmed (see `docs/vendors-edges.md`): the Japan Log API endpoint
//! (`jp` keys go to the US one unless `--newrelic-url`), and whether a JSON
//! `message` carrying its own `hostname`, `service_name` or `source`
//! replaces the values sent in `common`. New Relic documents that it parses
//! a `message` that is JSON (a string message only when its first 4,096
//! characters are whole JSON:
//! <https://docs.newrelic.com/docs/logs/troubleshooting/json-message-not-parsed/>)
//! but not which value wins when a parsed key names an attribute already
//! sent; the test intake does not parse messages.
//!
//! Files: [`config`] (license key → endpoint), [`request_builder`] (lines →
//! gzipped JSON), [`service`] (HTTP call → classification). Retry, batching
//! and backoff are the engine's ([`crate::sinks::engine`]), not this
//! module's.

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

/// Oldest line New Relic keeps at its own time.
pub const MAX_AGE: Duration = Duration::from_secs(48 * 3600);

/// Delivers one route's lines to New Relic. `Debug` redacts the key.
#[derive(Debug)]
pub struct NewRelicSink {
    agent_id: Arc<str>,
    endpoint: Endpoint,
    http: reqwest::Client,
    limits: BatchLimits,
}

impl NewRelicSink {
    /// Builds the sink of `route` from `NEW_RELIC_LICENSE_KEY`.
    pub fn new(
        route: &RouteKey,
        secrets: &Secrets,
        settings: &SinkSettings,
        http: &reqwest::Client,
    ) -> Result<Self, SecretError> {
        let endpoint = config::from_secrets(secrets, settings.newrelic_url.as_ref())?;
        Ok(Self {
            agent_id: Arc::from(route.agent_id.as_str()),
            endpoint,
            http: http.clone(),
            limits: BatchLimits {
                max_events: request_builder::MAX_EVENTS,
                max_bytes: request_builder::MAX_JSON_BYTES,
                max_linger: settings.max_linger,
            },
        })
    }

    /// The Log API URL.
    pub fn url(&self) -> &url::Url {
        &self.endpoint.url
    }
}

#[async_trait]
impl Sink for NewRelicSink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::NewRelic
    }

    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn max_age(&self) -> Option<Duration> {
        Some(MAX_AGE)
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        request_builder::event_size(&self.agent_id, line)
    }

    fn prepares(&self) -> bool {
        true
    }

    fn prepare(&self, lines: &[QueuedLine]) -> Result<Prepared, SinkError> {
        let encoded = request_builder::encode(&self.agent_id, lines)
            .map_err(|e| encoding_failed("New Relic", &e))?;
        request_builder::check_post_size(&encoded)?;
        Ok(Prepared::body(encoded.body))
    }

    async fn send_prepared(
        &self,
        _lines: &[QueuedLine],
        prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        service::post(&self.http, &self.endpoint, prepared.body).await?;
        Ok(SendOutcome::accepted())
    }
}
