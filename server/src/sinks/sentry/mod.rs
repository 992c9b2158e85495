//! Sentry logs sink: raw lines go to Sentry's Logs product, one log item per
//! line, never one error event per line.
//!
//! API: envelopes and their size limits
//! <https://develop.sentry.dev/sdk/envelopes/>, the `log` item
//! <https://develop.sentry.dev/sdk/data-model/envelope-items/> and its
//! payload <https://develop.sentry.dev/sdk/telemetry/logs/>, DSN and auth
//! <https://develop.sentry.dev/sdk/overview/#parsing-the-dsn>, rate limits
//! <https://develop.sentry.dev/sdk/foundations/transport/rate-limiting/>.
//!
//! Sentry's limits and rules, as this sink applies them:
//!
//! | limit | value | where |
//! |---|---|---|
//! | endpoint | `{scheme}://{host}{path}/api/{project_id}/envelope/` from `SENTRY_DSN`; `http://` allowed; public addresses only ([`crate::sinks::endpoint`]) | [`config::parse_dsn`] |
//! | auth | `X-Sentry-Auth: Sentry sentry_version=7, sentry_client=logdrain/<version>, sentry_key=<public key>` | [`config`] |
//! | body | one envelope, one `log` item, `Content-Type: application/x-sentry-envelope`, `Content-Encoding: gzip` | [`request_builder`] |
//! | logs per envelope | 100 (Sentry's SDKs flush at 100) | [`request_builder::MAX_ITEMS`] |
//! | one log | 1 MiB; longer bodies are cut here with a visible marker | [`request_builder::MAX_LOG_ITEM_BYTES`] |
//! | decompressed envelope | 12 MiB: Relay's default log container limit (over it the whole envelope gets 413) | [`request_builder::MAX_ENVELOPE_BYTES`] |
//! | `sent_at` | never sent: Relay shifts every log of an envelope whose `sent_at` is 55 min or more from its arrival, and a prefetched envelope can be sent long after it was encoded | [`request_builder`] |
//! | answers | 2xx accepted; 429 retry after `Retry-After` / `X-Sentry-Rate-Limits` (60 s if neither); 408/5xx retry; 400/413 permanent; 401/403 credentials | [`service::classify`] |
//! | rate limit on a 2xx | accepted, then no request until it expires ([`crate::sinks::SendOutcome::hold_off`]) | [`service::rate_limit`] |
//!
//! Files: [`config`] (DSN → endpoint and auth header), [`request_builder`]
//! (lines → gzipped envelope), [`service`] (HTTP call → classification).
//! Retry, batching, backoff and waiting out rate limits are the engine's
//! ([`crate::sinks::engine`]), not this module's.

pub mod config;
pub mod request_builder;
pub mod service;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;

use crate::queue::QueuedLine;
use crate::route::{DestinationKind, RouteKey, Secrets};
use crate::sinks::{
    encoding_failed, BatchLimits, Prepared, SecretError, SendOutcome, Sink, SinkError, SinkSettings,
};
use config::Endpoint;

/// Delivers one route's lines to Sentry. `Debug` redacts the public key.
#[derive(Debug)]
pub struct SentrySink {
    agent_id: Arc<str>,
    endpoint: Endpoint,
    http: reqwest::Client,
    limits: BatchLimits,
}

impl SentrySink {
    /// Builds the sink of `route` from `SENTRY_DSN`. `http` must be the
    /// client of tenant endpoints ([`crate::sinks::HttpClients::tenant`]),
    /// whose resolver applies `settings.endpoint_policy` to every address
    /// it connects to.
    pub fn new(
        route: &RouteKey,
        secrets: &Secrets,
        settings: &SinkSettings,
        http: &reqwest::Client,
    ) -> Result<Self, SecretError> {
        let endpoint = config::from_secrets(secrets, &settings.endpoint_policy)?;
        Ok(Self {
            agent_id: Arc::from(route.agent_id.as_str()),
            endpoint,
            http: http.clone(),
            limits: BatchLimits {
                max_events: request_builder::MAX_ITEMS,
                max_bytes: request_builder::MAX_ENVELOPE_BYTES
                    - request_builder::ENVELOPE_OVERHEAD_BYTES,
                max_linger: settings.max_linger,
            },
        })
    }

    /// The envelope endpoint (without the key).
    pub fn url(&self) -> &url::Url {
        &self.endpoint.url
    }
}

#[async_trait]
impl Sink for SentrySink {
    fn kind(&self) -> DestinationKind {
        DestinationKind::Sentry
    }

    fn limits(&self) -> BatchLimits {
        self.limits
    }

    fn event_size(&self, line: &QueuedLine) -> usize {
        request_builder::event_size(&self.agent_id, line)
    }

    fn prepares(&self) -> bool {
        true
    }

    fn prepare(&self, lines: &[QueuedLine]) -> Result<Prepared, SinkError> {
        let encoded = request_builder::encode(&self.agent_id, lines)
            .map_err(|e| encoding_failed("Sentry", &e))?;
        Ok(Prepared::body(encoded.body))
    }

    async fn send_prepared(
        &self,
        _lines: &[QueuedLine],
        prepared: Prepared,
    ) -> Result<SendOutcome, SinkError> {
        service::post(&self.http, &self.endpoint, prepared.body).await
    }
}
