//! `logdrain-test-intake`: serves every vendor test intake and the control
//! API on one port, for `docker compose` runs. Stops on SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use logdrain_test_intake::{DatadogConfig, Intake, IntakeConfig, NewRelicConfig, SentryConfig};

/// Vendor test intakes: check what the vendors check, answer the way they
/// answer, and record what they accepted (see `/_intake/...`).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "INTAKE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Accepted Datadog API key or client token; repeat, or separate with
    /// commas. None = every Datadog request gets 403.
    #[arg(
        long = "datadog-key",
        env = "INTAKE_DATADOG_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    datadog_keys: Vec<String>,

    /// Accepted Sentry public key (32 characters, the DSN's user part);
    /// repeat, or separate with commas. None = every Sentry request gets 403.
    #[arg(
        long = "sentry-key",
        env = "INTAKE_SENTRY_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    sentry_keys: Vec<String>,

    /// Accepted New Relic license key; repeat, or separate with commas.
    /// None = every New Relic request gets 403.
    #[arg(
        long = "newrelic-key",
        env = "INTAKE_NEWRELIC_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    newrelic_keys: Vec<String>,

    /// Entries kept in memory before further ones are only counted.
    #[arg(long, env = "INTAKE_MAX_ENTRIES", default_value_t = 10_000_000)]
    max_entries: usize,

    /// Serve the counting intake instead of the fake vendors, for
    /// benchmarks: count and time every line (see `/_intake/stats`), check
    /// and keep nothing.
    #[arg(long, env = "INTAKE_COUNT_ONLY")]
    count_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let key_count = args.datadog_keys.len() + args.sentry_keys.len() + args.newrelic_keys.len();
    let config = IntakeConfig {
        datadog: DatadogConfig {
            keys: args.datadog_keys,
            ..DatadogConfig::default()
        },
        sentry: SentryConfig {
            keys: args.sentry_keys,
            ..SentryConfig::default()
        },
        newrelic: NewRelicConfig {
            keys: args.newrelic_keys,
            ..NewRelicConfig::default()
        },
        max_recorded_entries: args.max_entries,
        count_only: args.count_only,
        ..IntakeConfig::default()
    };
    let intake = Intake::start_on(args.listen, config).await?;
    tracing::info!(addr = %intake.addr(), accepted_keys = key_count, "test intake listening");
    stop_signal()
        .await
        .context("cannot listen for stop signals")?;
    tracing::info!("stopping");
    intake.shutdown().await?;
    Ok(())
}

/// Completes on SIGTERM (`docker stop`) or Ctrl-C.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
