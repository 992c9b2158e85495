//! `logdrain-gateway serve`: wires queue, delivery engine, gRPC ingest and
//! HTTP together, and runs the shutdown sequence.
//!
//! Shutdown, on the future passed in (SIGTERM in the binary):
//! 1. stop accepting new streams (readyz turns 503, new streams are refused);
//! 2. open streams finish the batch they are appending, ack it, and end with
//!    UNAVAILABLE so shims reconnect elsewhere;
//! 3. deliveries in flight get `--shutdown-grace` to finish;
//! 4. the queue is flushed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::auth::{AuthError, ReadAccess, SigningKey};
use crate::config::ServeConfig;
use crate::fleet::{Fleet, FleetSettings};
use crate::http::{self, HttpState};
use crate::http_listener::{self, HttpLimits};
use crate::ingest::notice;
use crate::ingest::replicas::Replicas;
use crate::ingest::IngestService;
use crate::listener;
use crate::queue::{Queue, QueueError, QueueLimits};
use crate::shutdown::Shutdown;
use crate::sinks::endpoint::EndpointPolicy;
use crate::sinks::engine::{Engine, EngineSettings};
use crate::sinks::{cloudwatch, SinkError, SinkFactory, SinkSettings};
use crate::status::fleet::StatusSource;
use crate::tls::{ServerTls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the data dir {path}: {source}; set --data-dir / LOGDRAIN_DATA_DIR to a writable directory")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot listen on {addr} ({what}): {source}; choose a free address with {flag}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("invalid delivery settings: {0}")]
    Sinks(#[from] SinkError),
    #[error("the gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// HTTP/2 pings on every gRPC connection, and how long a ping may go
/// unanswered before the connection is closed.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent streams allowed on one gRPC connection (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS); the gateway-wide cap is
/// `--max-streams`.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Runs the gateway until `stop` resolves, then shuts down cleanly.
pub async fn run(
    config: ServeConfig,
    metrics_handle: PrometheusHandle,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ServerTls::load(cert, key, config.tls_client_ca.as_deref())?)
        }
        // clap requires both or neither.
        _ => None,
    };
    let data_dir = &config.key.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let key = SigningKey::load(config.key.signing_key.as_deref(), data_dir)?;
    if config.key.signing_key.is_none() {
        tracing::warn!(
            "the signing key is read from the data dir, so a copy of the data dir can decrypt the \
             route secrets stored in it; set LOGDRAIN_SIGNING_KEY from a secret store to keep the \
             key out of it"
        );
    }
    let queue_dir = data_dir.join("queue");
    let limits = QueueLimits {
        agent_quota_bytes: config.agent_quota_bytes,
        min_free_bytes: config.disk_min_free_bytes,
        cache_bytes: config.queue_cache_bytes,
    };
    let (queue, report, set_aside) = Queue::open_or_set_aside(&queue_dir, key.seal_key(), limits)?;
    if let Some(aside) = &set_aside {
        crate::metrics::queue_set_aside();
        tracing::error!(
            queue = %queue_dir.display(),
            moved_to = %aside.moved_to.display(),
            reason = %aside.reason,
            "sled reported the queue's index corrupt; its files were set aside (kept for inspection) and the index was rebuilt from the segment files"
        );
    }
    tracing::info!(
        segments = report.segments,
        lines = report.lines,
        routes = report.routes,
        "queue opened"
    );

    let shutdown = Shutdown::new();
    let cloudwatch_url =
        cloudwatch::config::endpoint_override(config.cloudwatch_url.as_ref(), |name| {
            std::env::var(name).ok()
        })?;
    let sinks = SinkFactory::new(SinkSettings {
        datadog_url: config.datadog_url.clone(),
        newrelic_url: config.newrelic_url.clone(),
        cloudwatch_url,
        request_timeout: config.vendor_timeout,
        endpoint_policy: EndpointPolicy::new(config.allowed_endpoint_nets()),
        ..SinkSettings::default()
    })?;
    let engine = Engine::new(
        queue.clone(),
        EngineSettings {
            park_interval: config.auth_retry_interval,
            max_routes_per_agent: config.max_routes_per_agent,
            ..EngineSettings::default()
        },
        sinks.clone(),
        shutdown.clone(),
    );
    for (route, secrets, first_seen_ms) in queue.stored_routes()? {
        engine.ensure_route_since(route, secrets, first_seen_ms);
    }
    engine.spawn_expiry();

    let grpc = bind(
        config.grpc_listen,
        "gRPC",
        "--grpc-listen / LOGDRAIN_GRPC_LISTEN",
    )
    .await?;
    let http_listener = bind(
        config.http_listen,
        "HTTP",
        "--http-listen / LOGDRAIN_HTTP_LISTEN",
    )
    .await?;
    let grpc_addr = grpc.local_addr().unwrap_or(config.grpc_listen);
    let http_addr = http_listener.local_addr().unwrap_or(config.http_listen);
    // A stable line on stdout tells scripts and tests where we listen.
    println!("logdrain-gateway: listening grpc={grpc_addr} http={http_addr}");
    tracing::info!(
        %grpc_addr,
        %http_addr,
        tls = tls.is_some(),
        client_certificates = tls.as_ref().is_some_and(|t| t.mutual),
        "serving"
    );

    let fleet = Fleet::start(
        FleetSettings {
            peers: config.peers.clone().map(|p| p.0).unwrap_or_default(),
            refresh: config.peer_refresh,
            advertise: config.advertise.clone(),
            listen: grpc_addr,
            tls: crate::tls::peer_client(
                config.peer_ca_file.as_deref(),
                config
                    .tls_client_ca
                    .as_ref()
                    .and(config.tls_cert.as_deref().zip(config.tls_key.as_deref())),
            )?,
        },
        shutdown.clone(),
    )
    .await;
    let status = StatusSource {
        engine: engine.clone(),
        queue: queue.clone(),
        replicas: Replicas::default(),
        sinks: sinks.clone(),
        access: ReadAccess {
            key: key.clone(),
            admin_token: config.admin_token.clone(),
        },
        fleet,
        peer_timeout: config.peer_timeout,
    };
    let service = IngestService::new(
        queue.clone(),
        engine.clone(),
        key.clone(),
        shutdown.clone(),
        config.open_timeout,
        config.max_streams,
        status.clone(),
    );
    let notices = notice::spawn(
        queue.clone(),
        engine.clone(),
        notice::NoticeSettings {
            quota_bytes: config.agent_quota_bytes,
            interval: config.quota_notice_interval,
        },
        shutdown.clone(),
    );
    let grpc_shutdown = shutdown.clone();
    let grpc_server = tonic::transport::Server::builder()
        // A connection whose peer stops answering pings is closed.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // A shim uses one stream per connection; a client opening more
        // than this on one connection waits for a free one.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(service.into_server());
    let grpc_stop = async move { grpc_shutdown.wait().await };
    // Either way, a connection that does not send the HTTP/2 preface within
    // --open-timeout (after its TLS handshake) is closed.
    let open_timeout = config.open_timeout;
    let grpc_task = match &tls {
        None => tokio::spawn(
            grpc_server
                .serve_with_incoming_shutdown(listener::incoming(grpc, open_timeout), grpc_stop),
        ),
        Some(tls) => {
            let incoming = ReceiverStream::new(tls.accept_grpc(grpc))
                .map(move |io| Ok::<_, std::io::Error>(listener::Guarded::new(io, open_timeout)));
            tokio::spawn(grpc_server.serve_with_incoming_shutdown(incoming, grpc_stop))
        }
    };
    let http_shutdown = shutdown.clone();
    let router = http::router(HttpState {
        metrics: metrics_handle,
        engine: engine.clone(),
        queue: queue.clone(),
        shutdown: shutdown.clone(),
        status,
        sinks,
        test_sends: crate::status::test_send::Limiter::default(),
        tls: tls.is_some(),
    });
    let http_limits = HttpLimits {
        max_connections: config.http_max_connections,
        header_timeout: config.http_header_timeout,
    };
    let http_task = match &tls {
        None => tokio::spawn(http_listener::serve(
            http_listener,
            router,
            http_limits,
            http_shutdown,
        )),
        Some(tls) => {
            let listener = tls
                .https_listener(http_listener)
                .map_err(ServeError::Http)?;
            tokio::spawn(http_listener::serve(
                listener,
                router,
                http_limits,
                http_shutdown,
            ))
        }
    };

    stop.await;
    tracing::info!("shutting down: refusing new streams, acking what is durable");
    shutdown.trigger();
    let grace = config.shutdown_grace;
    match tokio::time::timeout(grace, grpc_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!(?grace, "streams did not end within the grace period"),
    }
    engine.shutdown(grace).await;
    notices.abort();
    // Bounded: after a full disk (ENOSPC) sled's flushes never complete.
    match tokio::time::timeout(grace, queue.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "final queue flush failed; data acked earlier is already durable")
        }
        Err(_) => tracing::error!(
            ?grace,
            "final queue flush did not finish; data acked earlier is already durable"
        ),
    }
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), http_task).await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    if queue.storage_wedged() {
        // sled flushes when its last handle drops, and after a full disk
        // that flush never ends: keep one handle so the process can exit.
        // Everything acked was made durable before.
        std::mem::forget(queue.clone());
    }
    tracing::info!("stopped");
    Ok(())
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr,
            what,
            flag,
            source,
        })
}
